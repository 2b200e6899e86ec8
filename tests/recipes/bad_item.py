"""Bad test recipe: items are bare images, not (x, y) or (x, y, mask)."""
from torch.utils.data import Dataset

from lesions import LesionItems, features, model  # noqa: F401


class ImagesOnly(Dataset):
    def __init__(self):
        self.items = LesionItems()

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i][0]


def dataset():
    return ImagesOnly()
