"""Suite-wide settings: tiny models run fastest (and least noisily) on one thread."""
import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")
