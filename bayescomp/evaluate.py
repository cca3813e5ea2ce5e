"""Test error of a compressed model file: ``python -m bayescomp.evaluate PATH [data=NAME] [data.dir=DIR]``.

Decodes the ``.bcz`` file into a runnable network (:func:`bayescomp.compression.codec.load`) and
measures its error on the test split of the dataset it was trained on (recorded in the file;
``fashion_mnist`` for files written before datasets were recorded), found as ``bayescomp.run``
finds it and prepared with the file's ``preprocess``. A ``data=NAME`` or ``data.preprocess`` that
contradicts the file is refused: the error would describe no real use of the network. Options are written as in the runner: ``data=mnist``,
``data.dir=/path/with/idx/files``, ``data.tfds_data_dir=...``, ``data.preprocess=reference``.
"""

from __future__ import annotations

import sys

from bayescomp import data as data_lib
from bayescomp.compress import test_error
from bayescomp.compression import codec
from bayescomp.errors import BayescompError, ConfigError

#: The dataset of files that do not record theirs (written before format fields were added).
LEGACY_DEFAULT_DATASET = "fashion_mnist"

_OPTIONS = {"data": "name", "data.name": "name", "data.dir": "data_dir",
            "data.tfds_data_dir": "tfds_data_dir", "data.preprocess": "preprocess"}


def parse(argv: list[str]) -> tuple[str, dict]:
    """Split ``PATH key=value ...`` into the path and ``load_dataset`` keyword arguments."""
    if not argv or "=" in argv[0]:
        raise ConfigError("usage: python -m bayescomp.evaluate PATH.bcz [data=NAME] "
                          "[data.dir=DIR]")
    options = {}
    for item in argv[1:]:
        key, sep, value = item.partition("=")
        if not sep or key not in _OPTIONS:
            raise ConfigError(f"unknown option {item!r}; known: "
                              + ", ".join(f"{k}=..." for k in _OPTIONS))
        options[_OPTIONS[key]] = value
    return argv[0], options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    try:
        path, options = parse(argv)
        model, decoded = codec.load(path)
        for option, recorded in (("name", decoded.dataset), ("preprocess", decoded.preprocess)):
            if recorded is not None and options.setdefault(option, recorded) != recorded:
                key = "data" if option == "name" else "data.preprocess"
                raise ConfigError(f"{path} holds a network trained with {key}={recorded}, not "
                                  f"{options[option]}; drop {key}=... to evaluate it as trained")
        name = options.pop("name", LEGACY_DEFAULT_DATASET)
        dataset = data_lib.load_dataset(name, **options)
        if dataset.x_test.shape[1:] != tuple(decoded.input_shape):
            raise ConfigError(f"{path} holds a model for inputs {tuple(decoded.input_shape)}, but "
                              f"{name} has images {dataset.x_test.shape[1:]}; pick its dataset")
        error = test_error(model, dataset)
    except BayescompError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{path}: {decoded.model_name}, {decoded.file_bytes} bytes; test error on {name} "
          f"({len(dataset.y_test)} images): {error:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
