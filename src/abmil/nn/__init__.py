"""Neural building blocks over packed bags: segment ops, pooling, encoders, MIL models."""
from .dropout import KeyedDropout, set_dropout_key
from .encoders import MLPEncoder
from .models import DeepSupervisedMINet, EmbeddingMIL, InstanceMIL, MILOutput, ResidualMINet, make_pool
from .pooling import AttentionPool, MaxPool, MeanPool
from .segment import segment_max, segment_mean, segment_softmax, segment_sum

__all__ = [
    "AttentionPool", "DeepSupervisedMINet", "EmbeddingMIL", "InstanceMIL", "KeyedDropout", "MILOutput",
    "MLPEncoder", "MaxPool", "MeanPool", "ResidualMINet", "make_pool", "segment_max", "segment_mean",
    "segment_softmax", "segment_sum", "set_dropout_key",
]
