"""Train, validate, test or predict any zoo model: ``python train.py fit --model resnet20 --data cifar10``.

``python train.py --help`` and ``python train.py fit --help`` list every option; ``configs/`` holds the
recipes of the published weights. The logic lives in ``zoo/cli/train.py``.
"""

import sys

from zoo.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
