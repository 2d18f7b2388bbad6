#!/bin/sh
# How docs/sweeps was made: the ResNet-20 batch size x lr sweeps on the real CIFAR-10, one CPU thread, W&B offline,
# fp32 (this CPU has no bf16 instructions: the recipe's bf16-mixed is emulated there, > 10x slower), run from a copy
# of the tree so that edits made meanwhile do not reach the runs. Then the plot from the results table.
cd "$(dirname "$0")/../.." || exit 1
export OMP_NUM_THREADS=1 WANDB_MODE=offline ZOO_DATA_DIR="${ZOO_DATA_DIR:-/work/shared/data}"
for sweep in resnet20.batch_lr resnet20.batch_lr_32k; do
  .venv/bin/python -m zoo.cli.sweep "configs/sweeps/$sweep.yaml" --run_root ~/zoo-runs/sweeps \
    --trainer.precision 32-true --trainer.num_sanity_val_steps 0 --data.data_dir "$ZOO_DATA_DIR" || exit 1
done
.venv/bin/python -m zoo.cli.sweep configs/sweeps/resnet20.batch_lr.yaml --run_root ~/zoo-runs/sweeps \
  --plot model.lr data.batch_size final_val_acc final_train_loss --out docs/sweeps/resnet20_batch_lr.png \
  --title "ResNet-20 / CIFAR-10: same 8,192 samples per run (2 x 4,096), val on 2,048; 1 CPU thread"
