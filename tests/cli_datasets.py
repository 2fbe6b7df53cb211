"""Dataset factories for the CLI's --dataset tests (tests/test_cli.py): MiniZoo texture_orient images, 2 shots."""
import torch

from zoo_kernels import zoo

READS = []  # the rows read, across the factories' Datasets


class Rows(torch.utils.data.Dataset):
    def __init__(self, with_targets):
        self.x, self.y, _, _ = zoo.load_task("texture_orient", shots=2)
        if with_targets:
            self.targets = self.y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        READS.append(i)
        return self.x[i], int(self.y[i])


def with_targets():
    return Rows(True)


def without_targets():
    return Rows(False)


def not_a_dataset():
    return [1, 2, 3]
