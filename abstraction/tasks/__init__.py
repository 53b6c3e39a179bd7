"""The field's tasks, ready to run on any causal language model.

Each :class:`StandardTask` is a causal model with its prompt templates, vocabulary
(package data), candidate answers, the positions the literature intervenes on and its
standard rivals; :meth:`StandardTask.prompt_task` binds it to a tokenizer and
:meth:`StandardTask.experiment` builds its standard experiment on a network.
:func:`behaviour` says whether a network solves a task before anything is aligned.

Modules: :mod:`~abstraction.tasks.library` (the record and the registry), one module
per task (:mod:`~abstraction.tasks.ioi`, :mod:`~abstraction.tasks.agreement`), and
:mod:`~abstraction.tasks.behaviour`.
"""

from abstraction.tasks import agreement, ioi  # noqa: F401 - imported to register their tasks
from abstraction.tasks.behaviour import SOLVED, Behaviour, behaviour
from abstraction.tasks.library import StandardTask, get, names, register, vocabulary

__all__ = [
    "SOLVED",
    "Behaviour",
    "StandardTask",
    "behaviour",
    "get",
    "names",
    "register",
    "vocabulary",
]
