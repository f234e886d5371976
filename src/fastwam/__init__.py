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


def cpu_name() -> str:
    """The processor's model name ("AMD EPYC 7B13": /proc/cpuinfo on Linux), else its architecture.
    Benchmark records carry it: timings compare only between runs on one kind of processor."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def boot_id() -> str:
    """This boot of this machine (Linux's random boot id; "" elsewhere). Benchmark records carry it:
    two virtual machines of one processor model and host name are told apart by it."""
    from pathlib import Path

    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
