"""Test recipe: 12 synthetic 16x16 lesions with masks, a tiny seeded CNN, two features.

``EVAL_TEST_FAIL_AT=i`` makes reading dataset item ``i`` raise (a run killed half-way).
"""
import os

import torch
from torch.utils.data import Dataset

from captum_gradflow import Brightness, Extent, SmallCNN, synthetic_lesions

N_EXAMPLES = int(os.environ.get("EVAL_TEST_N", "12"))


class LesionItems(Dataset):
    def __init__(self, n=N_EXAMPLES, with_mask=True):
        self.data = synthetic_lesions(n, size=16, seed=0)
        self.with_mask = with_mask
        self.fail_at = int(os.environ.get("EVAL_TEST_FAIL_AT", "-1"))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"test hook: reading item {i} fails")
        d = self.data
        return (d.images[i], d.labels[i], d.masks[i]) if self.with_mask else (d.images[i], d.labels[i])


def model():
    torch.manual_seed(0)
    return SmallCNN(channels=(4, 4, 4), hidden=(16, 16), pool_size=2)


def dataset():
    return LesionItems()


def features():
    return [Brightness(), Extent()]
