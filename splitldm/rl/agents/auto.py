"""`AutoPolicy`: load any saved controller without naming its class (diffusers' ``AutoModel`` idea).

``AutoPolicy.from_pretrained(folder_or_name)`` reads the folder's ``config.json`` ``_class_name`` (or
the previous format's ``policy.json`` ``algorithm``) and calls that class's ``from_pretrained``.
"""

from __future__ import annotations

import os

from splitldm.rl.agents.common import read_class_name, resolve_pretrained
from splitldm.rl.agents.cvpo import CVPO
from splitldm.rl.agents.d3pg import D3PG
from splitldm.rl.agents.d3ql import D3QL
from splitldm.rl.agents.ddqn import DDQN
from splitldm.rl.agents.ppo import PPO
from splitldm.rl.agents.ppo_lagrangian import PPOLagrangian
from splitldm.rl.agents.t2drl import T2DRL

__all__ = ["AutoPolicy", "POLICY_CLASSES"]

#: Class name -> policy class (every controller that `save_pretrained` writes).
POLICY_CLASSES = {cls.__name__: cls for cls in (CVPO, PPO, PPOLagrangian, D3QL, DDQN, D3PG, T2DRL)}


class AutoPolicy:
    """Not instantiated: `from_pretrained` returns an instance of the saved class."""

    def __init__(self):
        raise TypeError("AutoPolicy: use AutoPolicy.from_pretrained(folder_or_name)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike):
        """The controller saved in a local folder, a zoo name, or a hub id (online only).

        Raises:
            FileNotFoundError: nothing to load there.
            ValueError: the saved class is not a splitldm controller.
        """
        folder = resolve_pretrained(pretrained_model_name_or_path)
        name = read_class_name(folder)
        if name not in POLICY_CLASSES:
            raise ValueError(f"pretrained_model_name_or_path: {folder} holds a {name!r}, "
                             f"not one of {sorted(POLICY_CLASSES)}")
        return POLICY_CLASSES[name].from_pretrained(folder)
