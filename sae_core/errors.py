class SAEFileError(ValueError):
    """A file or folder that should hold an SAE cannot be used; the message names it and why."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")
