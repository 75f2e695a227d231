"""Many users: fit-many on a process pool or Ray, groups of users, cold start, harness methods."""

from chameleon_llm.scale.coldstart import Choice, ColdStartRule, choose_edit, edit_for_new_user
from chameleon_llm.scale.engines import FitTask, FitWorker, LocalEngine, RayEngine, WorkerSpec, make_engine
from chameleon_llm.scale.fit_many import (
    FitManySummary,
    Manifest,
    UserSet,
    fit_many,
    users_from_dir,
    users_from_lamp,
)
from chameleon_llm.scale.groups import GroupModel, GroupOptions, GroupSet, fit_group_set, profile_embedding

__all__ = [
    "Choice",
    "ColdStartRule",
    "FitManySummary",
    "FitTask",
    "FitWorker",
    "GroupModel",
    "GroupOptions",
    "GroupSet",
    "LocalEngine",
    "Manifest",
    "RayEngine",
    "UserSet",
    "WorkerSpec",
    "choose_edit",
    "edit_for_new_user",
    "fit_group_set",
    "fit_many",
    "make_engine",
    "profile_embedding",
    "users_from_dir",
    "users_from_lamp",
]
