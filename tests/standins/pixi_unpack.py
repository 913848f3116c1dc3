#!/usr/bin/env python3
"""Stand-in for ``pixi-unpack``: install a pixi-pack pack into a prefix with nothing but Python 3's stdlib.

Also embedded verbatim in the self-extracting ``environment.sh`` written by ``pixi_pack.py
--create-executable``, so it must run on the cluster's own python3 (3.6+, standard library only, no conda).

    python3 pixi_unpack.py [-o DIR] [-e NAME] [-s bash] environment.tar
    bash environment.sh   [-o DIR] [-e NAME] [-s bash]

Creates ``DIR/NAME`` (the prefix; default ``./env``) and ``DIR/activate.sh``. Every package archive is
checked against the size and sha256 recorded in the pack's ``repodata.json`` before anything is extracted;
any error exits non-zero with a message on stderr (a partial ``DIR`` may be left behind).
"""

import argparse
import base64
import hashlib
import io
import json
import os
import platform as _platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

PACK_FORMAT_VERSION = "1"
HEADER_END = b"\n@@END_HEADER@@\n"
ARCHIVE_END = b"\n@@END_ARCHIVE@@"
HISTORY_TEXT = "// not relevant for pixi but for `conda run -p`"


class UnpackError(Exception):
    pass


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def current_platform():
    system = sys.platform
    machine = _platform.machine().lower()
    if system.startswith("linux"):
        arch = {
            "x86_64": "64",
            "amd64": "64",
            "aarch64": "aarch64",
            "arm64": "aarch64",
            "ppc64le": "ppc64le",
            "s390x": "s390x",
            "i686": "32",
            "i386": "32",
        }.get(machine, machine)
        return "linux-" + arch
    if system == "darwin":
        return "osx-arm64" if machine in ("arm64", "aarch64") else "osx-64"
    if system.startswith("win"):
        return "win-64"
    return system + "-" + machine


def safe_extract(tar, dest):
    """Extract a tar without letting members escape ``dest``."""
    dest_real = os.path.realpath(dest)
    for member in tar.getmembers():
        target = os.path.realpath(os.path.join(dest_real, member.name))
        if member.name.startswith("/") or not (target == dest_real or target.startswith(dest_real + os.sep)):
            raise UnpackError(f"refusing archive member outside the target: {member.name!r}")
        if member.islnk() or member.issym():
            link = member.linkname
            base = dest_real if member.islnk() else os.path.dirname(target)
            if os.path.isabs(link) or not os.path.realpath(os.path.join(base, link)).startswith(dest_real):
                raise UnpackError(f"refusing link outside the target: {member.name!r} -> {link!r}")
    if sys.version_info >= (3, 12):
        tar.extractall(dest, filter="tar")
    else:
        tar.extractall(dest)


# ------------------------------------------------------------------------------------------- the pack


def decode_self_extracting(script_path, out_tar):
    """Decode the base64 tar between ``@@END_HEADER@@`` and ``@@END_ARCHIVE@@`` of ``script_path``."""
    with open(script_path, "rb") as f:
        data = f.read()
    start = data.find(HEADER_END)
    if start < 0:
        raise UnpackError(f"marker @@END_HEADER@@ not found in {script_path}")
    start += len(HEADER_END)
    end = data.find(ARCHIVE_END, start)
    if end < 0:
        raise UnpackError(f"marker @@END_ARCHIVE@@ not found in {script_path}")
    try:
        payload = base64.b64decode(b"".join(data[start:end].split()), validate=True)
    except (ValueError, TypeError) as e:  # binascii.Error is a ValueError
        raise UnpackError(f"the archive embedded in {script_path} is not valid base64: {e}")
    with open(out_tar, "wb") as f:
        f.write(payload)


def unarchive(pack_file, unpack_dir):
    try:
        with tarfile.open(pack_file, "r:") as tar:
            safe_extract(tar, unpack_dir)
    except (tarfile.TarError, OSError) as e:
        raise UnpackError(f"could not unarchive {pack_file}: {e}")


def validate_metadata(unpack_dir):
    path = os.path.join(unpack_dir, "pixi-pack.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UnpackError(f"could not read metadata file pixi-pack.json: {e}")
    if meta.get("version") != PACK_FORMAT_VERSION:
        raise UnpackError("Unsupported pixi-pack version: {}".format(meta.get("version")))
    here = current_platform()
    if meta.get("platform") != here and not os.environ.get("PIXI_UNPACK_STANDIN_ANY_PLATFORM"):
        raise UnpackError(
            "The pack was created for a different platform ({}, this machine is {})".format(
                meta.get("platform"), here
            )
        )
    return meta


def collect_packages(channel_dir):
    """[(subdir, file_name, record)] from every ``channel/<subdir>/repodata.json``."""
    if not os.path.isdir(channel_dir):
        raise UnpackError("no channel directory in the pack")
    packages = []
    for subdir in sorted(os.listdir(channel_dir)):
        sub = os.path.join(channel_dir, subdir)
        if not os.path.isdir(sub):
            continue
        try:
            with open(os.path.join(sub, "repodata.json")) as f:
                repodata = json.load(f)
        except (OSError, ValueError) as e:
            raise UnpackError(f"could not read repodata in subdir {subdir}: {e}")
        for key in ("packages", "packages.conda"):
            for file_name, record in sorted((repodata.get(key) or {}).items()):
                packages.append((subdir, file_name, record))
    return packages


def verify_archive(path, record):
    file_name = os.path.basename(path)
    if not os.path.isfile(path):
        raise UnpackError(f"package {file_name} is listed in repodata.json but missing from the pack")
    size = os.path.getsize(path)
    if record.get("size") is not None and size != record["size"]:
        raise UnpackError(f"package {file_name} is corrupt: size {size}, repodata.json says {record['size']}")
    expected = record.get("sha256")
    if not expected:
        raise UnpackError(f"package {file_name} has no sha256 in repodata.json")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise UnpackError(
            f"package {file_name} is corrupt: sha256 {h.hexdigest()}, repodata.json says {expected}"
        )


# ---------------------------------------------------------------------------------- conda archives


def zstd_decompress(data, what):
    try:
        from compression import zstd  # Python >= 3.14

        return zstd.decompress(data)
    except ImportError:
        pass
    for mod_name in ("zstandard", "backports.zstd"):
        try:
            mod = __import__(mod_name, fromlist=["_"])
        except ImportError:
            continue
        if mod_name == "zstandard":
            return mod.ZstdDecompressor().decompressobj().decompress(data)
        return mod.decompress(data)
    exe = shutil.which("zstd")
    if exe:
        proc = subprocess.run([exe, "-dc"], input=data, capture_output=True, check=False)
        if proc.returncode == 0:
            return proc.stdout
        raise UnpackError("zstd failed on {}: {}".format(what, proc.stderr.decode(errors="replace").strip()))
    raise UnpackError(
        f"{what} is a .conda package (zstd inside) and this python3 has no zstd support and no zstd "
        "binary is on PATH"
    )


def extract_package(archive, dest):
    """Extract a .tar.bz2 or .conda package (info/ and the files) into ``dest``."""
    name = os.path.basename(archive)
    os.makedirs(dest)
    try:
        if name.endswith(".tar.bz2"):
            with tarfile.open(archive, "r:bz2") as tar:
                safe_extract(tar, dest)
        elif name.endswith(".conda"):
            with zipfile.ZipFile(archive) as z:
                inner = [n for n in z.namelist() if n.endswith(".tar.zst")]
                if not any(n.startswith("info-") for n in inner) or not any(
                    n.startswith("pkg-") for n in inner
                ):
                    raise UnpackError(f"{name} is not a valid .conda archive (members: {z.namelist()})")
                for member in sorted(inner):
                    raw = zstd_decompress(z.read(member), f"{name}/{member}")
                    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
                        safe_extract(tar, dest)
        else:
            raise UnpackError(f"unknown package format: {name}")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise UnpackError(f"could not extract {name}: {e}")


def read_paths(pkg_dir):
    paths_json = os.path.join(pkg_dir, "info", "paths.json")
    if os.path.isfile(paths_json):
        with open(paths_json) as f:
            return json.load(f).get("paths", [])
    files = os.path.join(pkg_dir, "info", "files")
    if os.path.isfile(files):
        with open(files) as f:
            return [{"_path": line.strip(), "path_type": "hardlink"} for line in f if line.strip()]
    raise UnpackError(f"package in {pkg_dir} has neither info/paths.json nor info/files")


def link_package(pkg_dir, prefix, record, python_version, owners):
    noarch = record.get("noarch")
    if isinstance(noarch, dict):
        noarch = noarch.get("type")
    files, paths_data = [], []
    for entry in read_paths(pkg_dir):
        rel = entry["_path"]
        dest_rel = rel
        if noarch == "python":
            if python_version is None:
                raise UnpackError(
                    "{} is a noarch: python package, but the pack has no python package".format(
                        record.get("name")
                    )
                )
            if rel.startswith("site-packages/"):
                dest_rel = "lib/python{}/site-packages/{}".format(
                    python_version, rel[len("site-packages/") :]
                )
            elif rel.startswith("python-scripts/"):
                dest_rel = "bin/" + rel[len("python-scripts/") :]
        src = os.path.join(pkg_dir, rel)
        dst = os.path.join(prefix, dest_rel)
        if dest_rel in owners:
            log(
                "warning: {} (from {}) overwrites the file of {}".format(
                    dest_rel, record.get("name"), owners[dest_rel]
                )
            )
        owners[dest_rel] = record.get("name")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.lexists(dst):
            os.unlink(dst)
        path_type = entry.get("path_type", "hardlink")
        if path_type == "softlink" or os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif path_type == "directory":
            os.makedirs(dst, exist_ok=True)
        else:
            placeholder = entry.get("prefix_placeholder")
            if placeholder:
                with open(src, "rb") as f:
                    content = f.read()
                old, new = placeholder.encode(), os.path.abspath(prefix).encode()
                if entry.get("file_mode") == "binary":
                    if len(new) > len(old):
                        raise UnpackError(f"prefix {prefix} is longer than the placeholder of {rel}")
                    content = _replace_binary(content, old, new)
                else:
                    content = content.replace(old, new)
                with open(dst, "wb") as f:
                    f.write(content)
                shutil.copymode(src, dst)
            else:
                shutil.copy2(src, dst)
        files.append(dest_rel)
        data = {"_path": dest_rel, "path_type": path_type}
        for key in ("sha256", "size_in_bytes", "prefix_placeholder", "file_mode", "no_link"):
            if key in entry:
                data[key] = entry[key]
        paths_data.append(data)
    return files, paths_data


def _replace_binary(content, old, new):
    """conda's binary prefix replacement: keep each NUL-terminated string's length by NUL padding."""
    out, pos = [], 0
    while True:
        i = content.find(old, pos)
        if i < 0:
            out.append(content[pos:])
            return b"".join(out)
        end = content.find(b"\0", i)
        end = len(content) if end < 0 else end
        segment = content[i:end]
        replaced = segment.replace(old, new)
        out.append(content[pos:i])
        out.append(replaced + b"\0" * (len(segment) - len(replaced)))
        pos = end


# --------------------------------------------------------------------------------------- the prefix


def shell_quote(s):
    return "'" + s.replace("'", "'\"'\"'") + "'"


def create_prefix(unpack_dir, prefix):
    channel_dir = os.path.join(unpack_dir, "channel")
    packages = collect_packages(channel_dir)
    for subdir, file_name, record in packages:
        verify_archive(os.path.join(channel_dir, subdir, file_name), record)
    log(f"Extracting and installing {len(packages)} packages to {prefix}...")
    python_version = None
    for _, _, record in packages:
        if record.get("name") == "python":
            python_version = ".".join(str(record.get("version", "")).split(".")[:2])
    os.makedirs(os.path.join(prefix, "conda-meta"), exist_ok=True)
    cache = os.path.join(unpack_dir, "cache")
    owners = {}
    for subdir, file_name, record in packages:
        archive = os.path.join(channel_dir, subdir, file_name)
        stem = (
            file_name[: -len(".tar.bz2")]
            if file_name.endswith(".tar.bz2")
            else os.path.splitext(file_name)[0]
        )
        pkg_dir = os.path.join(cache, stem)
        extract_package(archive, pkg_dir)
        files, paths_data = link_package(pkg_dir, prefix, record, python_version, owners)
        meta = dict(record)
        meta.update(
            {
                "fn": file_name,
                "url": "file://" + os.path.abspath(archive),
                "channel": None,
                "files": files,
                "paths_data": {"paths_version": 1, "paths": paths_data},
                "extracted_package_dir": pkg_dir,
                "package_tarball_full_path": os.path.abspath(archive),
                "link": {"source": pkg_dir, "type": 1},
            }
        )
        meta_name = "{}-{}-{}.json".format(record["name"], record["version"], record["build"])
        with open(os.path.join(prefix, "conda-meta", meta_name), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
    with open(os.path.join(prefix, "conda-meta", "history"), "w") as f:
        f.write(HISTORY_TEXT)
    return packages


def create_activation_script(output_dir, prefix, shell):
    if shell not in ("bash", "zsh", "sh"):
        raise UnpackError(f"shell {shell!r} is not supported by the stand-in (bash, zsh)")
    lines = [
        'export PATH={}"${{PATH:+:${{PATH}}}}"'.format(shell_quote(os.path.join(prefix, "bin"))),
        f"export CONDA_PREFIX={shell_quote(prefix)}",
    ]
    activate_d = os.path.join(prefix, "etc", "conda", "activate.d")
    if os.path.isdir(activate_d):
        for name in sorted(os.listdir(activate_d)):
            if name.endswith(".sh"):
                lines.append(f". {shell_quote(os.path.join(activate_d, name))}")
    with open(os.path.join(output_dir, "activate.sh"), "w") as f:
        f.write("\n".join(lines) + "\n")


def unpack(pack_file, output_dir, env_name, shell="bash", self_extracting=False):
    if shell not in ("bash", "zsh", "sh"):
        raise UnpackError(f"shell {shell!r} is not supported by the stand-in (bash, zsh)")
    output_dir = os.path.abspath(output_dir)
    prefix = os.path.join(output_dir, env_name)
    tmp = tempfile.mkdtemp(prefix="pixi-unpack-")
    try:
        unpack_dir = os.path.join(tmp, "pack")
        os.makedirs(unpack_dir)
        tar_path = pack_file
        if self_extracting:
            tar_path = os.path.join(tmp, "archive.tar")
            decode_self_extracting(pack_file, tar_path)
        unarchive(tar_path, unpack_dir)
        validate_metadata(unpack_dir)
        os.makedirs(output_dir, exist_ok=True)
        create_prefix(unpack_dir, prefix)
        if os.path.isdir(os.path.join(unpack_dir, "pypi")) and os.listdir(os.path.join(unpack_dir, "pypi")):
            raise UnpackError("the pack holds PyPI wheels; the stand-in unpacker does not install them")
        create_activation_script(output_dir, prefix, shell)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"Finished unpacking to {output_dir}.")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="pixi-unpack", description="Unpack an environment packed with pixi-pack"
    )
    parser.add_argument("pack_file", help="Path to an environment packed using pixi-pack")
    parser.add_argument(
        "-o",
        "--output-directory",
        default=os.getcwd(),
        help="Where to unpack the environment [default: current directory]",
    )
    parser.add_argument("-e", "--env-name", default="env", help="Name of the environment [default: env]")
    parser.add_argument(
        "-s", "--shell", default="bash", help="Shell of the activation script [default: bash]"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="count", default=0)
    parser.add_argument("--self-extracting", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        unpack(args.pack_file, args.output_directory, args.env_name, args.shell, args.self_extracting)
    except UnpackError as e:
        log(f"Error: {e}")
        return 1
    except Exception as e:  # noqa: BLE001 - any other failure must still be a clean non-zero exit
        log(f"Error: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
