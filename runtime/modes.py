"""The DiT heads a fuse call can run, and the one it runs unless told (no imports: the CLI's ``--help``
reads these without numpy)."""

MODES = ("flow", "regression")

# regression: the shipped flow head is behind it on every task (held-out pairs, `latentfuse evaluate`, clean
# protocol: PSNR to the reference 17.9 / 18.1 / 22.4 dB against 22.3 / 21.9 / 32.4 for VIF / MEF / MFF, with
# visible colour and brightness shifts), short of issue 27's bar of 0.5 dB, so flow runs on --mode flow.
# fuse, fuse-dir, demo, serve and the C++ host (FuseOptions::mode) all default to it.
DEFAULT_MODE = "regression"
