"""What the reference code feeds its DataLoader: a list of bags and their labels, one item per bag."""
from torch.utils.data import Dataset


class BagList(Dataset):
    def __init__(self, bags, labels):
        self.bags, self.labels = bags, labels

    def __len__(self):
        return len(self.bags)

    def __getitem__(self, i):
        return self.bags[i], self.labels[i]
