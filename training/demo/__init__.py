"""The main job on a built-in world: the whole pipeline checked against planted truth."""
