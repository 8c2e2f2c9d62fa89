"""The closed vocabularies of servegate's parameters (tasks, targets, server modes).

Standard library only: the promotion workflow validates a dispatch payload with these before
anything is installed (``servegate.dispatch``).
"""

from __future__ import annotations

#: Tasks of tensor models (the handler family serves each without a custom handler).
TENSOR_TASKS = ("classification", "regression", "tensor", "image-classification")
#: Tasks of text models (requests carry strings, tokenised in the worker).
TEXT_TASKS = ("embedding", "text-classification")
TASKS = TENSOR_TASKS + TEXT_TASKS
#: Tasks whose first output holds class scores (labels, top-1 and accuracy apply).
CLASS_TASKS = ("classification", "image-classification", "text-classification")
#: Older names still accepted.
TASK_ALIASES = {"tensor-classification": "classification"}
#: Serving targets.
TARGETS = ("torchserve", "tfserving")
