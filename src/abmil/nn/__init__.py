"""Neural building blocks over packed bags: segment ops, pooling, encoders, MIL models, the model registry."""
from .chunked import attention_pool_bag, chunked_attention, chunked_attention_pool
from .dropout import KeyedDropout, set_dropout_key
from .encoders import MLPEncoder
from .models import DeepSupervisedMINet, EmbeddingMIL, InstanceMIL, MILOutput, ResidualMINet
from .pooling import POOLINGS, AttentionPool, MaxPool, MeanPool, make_pool
from .segment import segment_max, segment_mean, segment_softmax, segment_sum
from .zoo import FAMILIES, MODELS, create_model

__all__ = [
    "FAMILIES", "MODELS", "POOLINGS", "AttentionPool", "DeepSupervisedMINet", "EmbeddingMIL", "InstanceMIL",
    "KeyedDropout", "MILOutput", "MLPEncoder", "MaxPool", "MeanPool", "ResidualMINet", "attention_pool_bag",
    "chunked_attention", "chunked_attention_pool", "create_model", "make_pool", "segment_max", "segment_mean",
    "segment_softmax", "segment_sum", "set_dropout_key",
]
