"""Interrupting a training run on purpose, for the resume tests of the heads and the adapter."""


def stop_after_checkpoints(monkeypatch, module, n: int = 2) -> tuple[list[int], object]:
    """Make ``module._write_checkpoint`` raise KeyboardInterrupt right after its ``n``-th write,
    as a user's Ctrl-C would. Returns the steps written so far (filled as it runs) and a
    function that puts the real writer back."""
    write = module._write_checkpoint
    steps: list[int] = []

    def write_then_stop(*args):
        write(*args)
        steps.append(args[5])
        if len(steps) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "_write_checkpoint", write_then_stop)
    return steps, lambda: monkeypatch.setattr(module, "_write_checkpoint", write)
