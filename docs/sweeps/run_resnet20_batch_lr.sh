#!/bin/sh
# The ResNet-20 batch size x lr sweep on the real CIFAR-10, one CPU thread, W&B offline (a snapshot of the tree)
cd ~/zoo-runs/sweep-src
export OMP_NUM_THREADS=1 WANDB_MODE=offline ZOO_DATA_DIR=/work/shared/data
exec /work/main/.venv/bin/python -m zoo.cli.sweep configs/sweeps/resnet20.batch_lr.yaml --run_root ~/zoo-runs/sweeps \
  --trainer.precision 32-true --trainer.num_sanity_val_steps 0 --data.data_dir /work/shared/data
