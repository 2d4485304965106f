"""Training of the MMAIF MoE-DiT and the tiny VAE.

    config.py        TrainConfig: TOML / YAML, one key per hyper-parameter (paper 4.2 defaults)
    losses.py        Eq. 8 (regression), Eq. 11 (flow matching), Eq. 9-10 (pixel-space auxiliary loss)
    optim.py         cautious AdamW (Liang et al. 2024) and the cosine schedule with warmup
    ema.py           EMA of the weights
    ewc.py           elastic weight consolidation (FusionFM continual learning)
    replay.py        reservoir experience replay (FusionFM continual learning)
    data.py          the latent cache of a `latentfuse data build` folder
    checkpoint.py    atomic checkpoints (safetensors + trainer state) and exact resume
    trainer.py       the training loop (grad accumulation, bf16, DDP)
    run.py           config -> components, data, DiT, trainer (what `latentfuse train` runs)
    vae_trainer.py   training and measuring the tiny VAE
    plot.py          loss curves PNG
    recipe.py        the bundled default's recipe file (configs/recipes/default.toml) and its keys
    default_model.py the default model's stages (data, VAE, DiTs, fp16 save, fidelity decoder)
    model_card.py    its MODEL_CARD.md, from templates/model_card.md
    recipe_cli.py    `latentfuse train --recipe FILE`: the stages run in turn, evaluated, the card written
    cli.py           `latentfuse train --config FILE [--resume DIR]` | `--recipe FILE`
"""
