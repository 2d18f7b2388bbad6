"""Entry points: the ``zoo`` command (``main``), the LightningCLI behind ``train.py`` (``train``) and ``make demo``
(``demo``). They use the package's public API."""
