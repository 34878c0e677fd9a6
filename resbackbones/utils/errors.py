"""Every error the library raises for a user's mistake, in one module at the bottom of the layers.

The tools' contract (docs/reliability.md): a `UserError` is printed as one line "error: <message>" on stderr and
the tool exits 2; `TrainingDiverged` exits 3 with the last good checkpoint kept. Each package raises its own
subclass (and re-exports it where users met it first: `resbackbones.config.ConfigError`,
`resbackbones.data.errors.DataError`, `resbackbones.weights.errors.WeightsError`, ...), so a caller can catch one
kind or all of them:

    try:
        model = rb.build_classifier("resnet50", weights=path)
    except rb.utils.errors.UserError as error:   # any file, key, value or shape the library refused
        print(error)                              # one line naming the file / key / layer

They subclass ValueError, as they did before this module existed, so existing `except ValueError` code still works.
"""


class UserError(ValueError):
    """An input (file, config key, value, path, shape) the library cannot use as given; the message is one line
    naming it, what is wrong and the fix. Tools exit 2."""


class ConfigError(UserError):
    """A user mistake in a config file or override; the message is one line naming the key/file."""


class DataError(UserError):
    """A dataset that cannot be read as asked; the message names the file, folder or archive at fault."""


class CocoEvalError(UserError):
    """Unusable ground truth or detections; the message is one line naming the file / image / category."""


class WeightsError(UserError):
    """A weights file or state dict that cannot be used as asked; the message names the file/keys/layers."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not match the model; the message names the file."""


class OutputError(UserError):
    """An output that cannot or must not be written; one line naming the file, the reason and the fix."""


class DeployError(UserError):
    """The export cannot be made (missing optional package, a format torch cannot capture); one line."""


class TrainingDiverged(RuntimeError):
    """Training produced a NaN/inf loss, gradient or weight; training stopped and the last good checkpoint was kept.

    The message names the iteration (and the loss terms or the first bad parameter); the tools print it as
    "error: <message>" and exit with status 3.
    """


__all__ = ["CheckpointError", "CocoEvalError", "ConfigError", "DataError", "DeployError", "OutputError",
           "TrainingDiverged", "UserError", "WeightsError"]
