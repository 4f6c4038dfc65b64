"""Which Fast DDS profile file a launch argument or variable names: one mapping for every launch file."""

import os

__all__ = ["PROFILES", "profile_path"]

# Name -> file in the package's config/ (doc/deploy.md): shared memory and UDP on one host, UDP only between hosts.
PROFILES = {"onehost": "fastdds.xml", "interhost": "fastdds_interhost.xml"}


def profile_path(choice: str, config_dir: str) -> str:
    """The profile file for ``choice``: a name of PROFILES (in ``config_dir``) or the path of an XML file of the
    user's; anything else is refused with what is accepted."""
    if choice in PROFILES:
        return os.path.join(config_dir, PROFILES[choice])
    if os.path.isfile(choice):
        return choice
    raise ValueError(f"fastdds_profile:={choice}: expected {', '.join(PROFILES)} or the path of an XML file")
