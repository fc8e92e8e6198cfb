import torch

# The test models are tiny: one thread avoids oversubscribing CI's two cores (and
# is several times faster when other processes share the machine).
torch.set_num_threads(1)
