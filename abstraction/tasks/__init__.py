"""The field's tasks, ready to run on any causal language model.

Each :class:`StandardTask` is a causal model with its prompt templates, vocabulary
(package data), candidate answers, the positions the literature intervenes on and its
standard rivals; :meth:`StandardTask.prompt_task` binds it to a tokenizer and
:meth:`StandardTask.experiment` builds its standard experiment on a network.
:func:`behaviour` says whether a network solves a task before anything is aligned.

Modules: :mod:`~abstraction.tasks.library` (the record and the registry), one module
per task (``ioi``, ``agreement``, ``greater_than``, ``factual_recall``, ``mcqa``,
``entity_binding``), and
:mod:`~abstraction.tasks.behaviour`, and :mod:`~abstraction.tasks.table` (every task a
network solves, aligned under one budget: ``abstraction tasks table MODEL``).
"""

# imported to register their tasks, in the order `abstraction tasks list` prints them
from abstraction.tasks import (  # noqa: F401
    agreement,
    entity_binding,
    factual_recall,
    greater_than,
    ioi,
    mcqa,
)
from abstraction.tasks.behaviour import SOLVED, Behaviour, behaviour
from abstraction.tasks.library import StandardTask, get, names, register, vocabulary
from abstraction.tasks.table import ResultsTable, TableBudget, TableRow, results_table

__all__ = [
    "SOLVED",
    "Behaviour",
    "ResultsTable",
    "StandardTask",
    "TableBudget",
    "TableRow",
    "behaviour",
    "get",
    "names",
    "register",
    "results_table",
    "vocabulary",
]
