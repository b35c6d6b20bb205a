"""``ringflow.tensorflow.keras`` is `ringflow.keras` (Horovod's ``horovod.tensorflow.keras``)."""

import sys

import ringflow.keras as _keras
import ringflow.keras.callbacks as _callbacks

sys.modules[__name__ + ".callbacks"] = _callbacks
sys.modules[__name__] = _keras
