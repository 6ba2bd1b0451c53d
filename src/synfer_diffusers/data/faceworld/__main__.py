"""`python -m synfer_diffusers.data.faceworld --output-dir D ...`: writes FaceWorld splits (see [`main`])."""

import sys

from .dataset import main

if __name__ == "__main__":
    sys.exit(main())
