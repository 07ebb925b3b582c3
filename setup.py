"""Packaging shim: the metadata is in pyproject.toml.

setup.py keeps what pyproject.toml cannot say plainly: the Alembic
environment lives in the top-level ``db/`` directory of the source tree and
is installed as ``conductor.migrations``, so that an installed conductor can
upgrade its own schema.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["conductor", "conductor.*"])
    + ["conductor.migrations", "conductor.migrations.versions"],
    package_dir={
        "conductor.migrations": "db",
        "conductor.migrations.versions": "db/versions",
    },
    package_data={
        "conductor.migrations": ["script.py.mako", "alembic.ini"],
        "conductor.ramdisk": ["files/*"],
        # The dashboard's page, scripts and style sheet (conductor/api/ui.py serves them).
        # And Swagger UI's, vendored (conductor/api/docs.py serves them).
        "conductor.api": ["ui_files/*", "docs_files/*"],
    },
)
