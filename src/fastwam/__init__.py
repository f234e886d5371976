"""fastwam: Fast-WAM, a World Action Model that trains with video and acts without imagining it."""

__version__ = "0.1.0"


def code_version() -> str:
    """This code: the version and, in a git checkout, its commit ("0.1.0+8eea815", "+dirty" when
    src/fastwam has uncommitted changes). Benchmark records carry it: a fix that changes the numbers
    (an env's reset, a sampler) separates the rows measured before it from those after."""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:  # this file tracked by the repository around it: a wheel inside some other checkout is not
        subprocess.run(["git", "-C", str(here), "ls-files", "--error-unmatch", "__init__.py"], capture_output=True,
                       timeout=10, check=True)
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__  # an installed wheel, or no git: the version alone
    return f"{__version__}+{commit}" + ("+dirty" if dirty else "")
