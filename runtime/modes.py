"""The DiT heads a fuse call can run, and the one it runs unless told (no imports: the CLI's ``--help``
reads these without numpy)."""

MODES = ("flow", "regression")

# regression: one DiT call. The flow (--mode flow) refines the regression estimate from t0 = 0.5 in five calls and is
# level with it on held-out pairs (+0.06 to +0.30 dB, `latentfuse evaluate`), so the faster head is the default.
# fuse, fuse-dir, demo, serve and the C++ host (FuseOptions::mode) all default to it.
DEFAULT_MODE = "regression"
