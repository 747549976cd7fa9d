"""What a pull names, which GGUF files that is, and the alias it makes; no network.

Two spellings name a model on the Hugging Face Hub::

    REPO FILENAME [revision]      PullRequest(repo, revision, filename=FILENAME)
    hf.co/REPO[:QUANT]            PullRequest(repo, "main", quant=QUANT or "Q4_K_M")

``QUANT`` picks the GGUF whose path carries it as a word, ``_`` counting as part of
a word (``Q4_K_M`` is in ``Llama-3.2-1B-Instruct-Q4_K_M.gguf``, not in
``...-IQ4_K_M.gguf``; ``Q4_K`` is in neither ``...Q4_K_M`` nor ``...Q4_K_S``), case
ignored; ``mmproj*`` projector files are never a model. A split GGUF
(``name-00001-of-00003.gguf``) is one model of every part; the alias names part 1,
which llama.cpp opens (it finds the others itself).

The alias a pull writes has the usual shape (``repo``, ``filename``, ``snapshot``)
with the commit the pull resolved as the snapshot, so a later pull that moves
``refs/main`` cannot orphan it. Its default name is the repo name without a
``-GGUF`` suffix, then ``:`` and the quant when one was asked for or the file name
carries one, lower-cased: ``hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`` ->
``llama-3.2-1b-instruct:q4_k_m``; ``hf.co/OWNER/Foo-GGUF`` (no quant) -> ``foo``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

from bodhi_trio._config._aliases import Alias, validate_alias_name
from bodhi_trio._config._hf_cache import validate_filename, validate_repo_id, validate_snapshot
from bodhi_trio._exceptions import (
    AliasExistsError,
    AliasNotFoundError,
    InvalidRequestError,
    QuantNotFoundError,
)

if TYPE_CHECKING:
    from bodhi_trio._config._alias_store import AliasStore

__all__ = [
    "DEFAULT_QUANT",
    "PullRequest",
    "check_alias_target",
    "default_alias_name",
    "gguf_models",
    "match_quant",
    "parse_model_ref",
    "quant_in_filename",
    "split_parts",
    "write_pull_alias",
]

DEFAULT_QUANT = "Q4_K_M"
"""The quant ``hf.co/REPO`` without ``:QUANT`` means (Ollama's and llama.cpp's default)."""

_REF_PREFIXES = ("https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")
_QUANT = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# A quant name in a file name: Q4_K_M, IQ3_XXS, Q8_0, BF16, F16, ...
_QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])(I?Q[0-9](?:_[A-Z0-9]+)*|BF16|F16|F32|FP16)(?![A-Za-z0-9])", re.IGNORECASE
)
_BODY_KEYS = frozenset({"model", "repo", "filename", "revision", "alias", "stream"})
_MAX_LISTED = 40


def _is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def _check_gguf_name(filename: object) -> str:
    name = validate_filename(filename)
    if not _is_gguf(name):
        raise InvalidRequestError(f"filename {name!r} is not a .gguf file", param="filename")
    return name


def parse_model_ref(ref: object) -> tuple[str, str | None]:
    """``hf.co/OWNER/REPO[:QUANT]`` (also ``huggingface.co/...``) as ``(repo, quant)``.

    ``quant`` is ``None`` when absent or ``latest`` (then :data:`DEFAULT_QUANT` applies).

    Raises:
        InvalidRequestError: Not that shape (``param`` is ``model``).
    """
    if not isinstance(ref, str):
        raise InvalidRequestError(
            "'model' must be a string 'hf.co/OWNER/REPO[:QUANT]'", param="model"
        )
    prefix = next((p for p in _REF_PREFIXES if ref.lower().startswith(p)), None)
    if prefix is None:
        raise InvalidRequestError(
            f"model {ref[:80]!r} is not 'hf.co/OWNER/REPO[:QUANT]' (only Hugging Face models"
            " can be pulled)",
            param="model",
        )
    rest = ref[len(prefix) :]
    repo, _, quant = rest.partition(":")
    try:
        validate_repo_id(repo)
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param="model") from exc
    if not quant or quant.lower() == "latest":
        return repo, None
    if _QUANT.fullmatch(quant) is None:
        raise InvalidRequestError(
            f"quant {quant[:40]!r} must be 1 to 32 letters, digits, '_', '.' or '-'",
            param="model",
        )
    return repo, quant


def split_parts(filename: str) -> tuple[str, ...]:
    """Every part of a split GGUF, part 1 first; ``(filename,)`` if it is not split.

    Any part names the whole model: ``m-00002-of-00003.gguf`` gives all three.
    """
    match = _SPLIT.match(filename)
    if match is None:
        return (filename,)
    count = int(match["count"])
    if count < 1:
        return (filename,)
    return tuple(
        f"{match['stem']}-{index:05d}-of-{count:05d}.gguf" for index in range(1, count + 1)
    )


def gguf_models(files: Iterable[str]) -> list[tuple[str, ...]]:
    """The models among a repo's files: each a tuple of its GGUF parts (one unless split).

    Projector files (``mmproj*``) are left out; parts are grouped, part 1 first.
    """
    models: dict[str, tuple[str, ...]] = {}
    for path in sorted(files):
        if not _is_gguf(path) or path.rsplit("/", 1)[-1].lower().startswith("mmproj"):
            continue
        parts = split_parts(path)
        models.setdefault(parts[0], parts)
    return [models[key] for key in sorted(models)]


def _quant_pattern(quant: str) -> re.Pattern[str]:
    # A whole word, "_" included: IQ4_XS is not Q4_XS, Q4_K is not Q4_K_M, K is not Q6_K.
    return re.compile(rf"(?<![A-Za-z0-9_]){re.escape(quant)}(?![A-Za-z0-9_])", re.IGNORECASE)


def _listing(models: list[tuple[str, ...]]) -> str:
    names = [m[0] if len(m) == 1 else f"{m[0]} (+{len(m) - 1} parts)" for m in models]
    if len(names) > _MAX_LISTED:
        names = [*names[:_MAX_LISTED], f"... {len(names) - _MAX_LISTED} more"]
    return ", ".join(names) if names else "none"


def match_quant(repo: str, files: Iterable[str], quant: str | None) -> tuple[str, ...]:
    """The parts of the one model of ``files`` whose path carries ``quant``.

    ``quant`` ``None`` means :data:`DEFAULT_QUANT`, or the repo's only model if no
    file carries that.

    Raises:
        QuantNotFoundError: No model or several carry it; the message lists the
            repo's GGUF models.
    """
    models = gguf_models(files)
    wanted = quant or DEFAULT_QUANT
    pattern = _quant_pattern(wanted)
    found = [m for m in models if pattern.search(m[0])]
    if len(found) == 1:
        return found[0]
    if not found and quant is None and len(models) == 1:
        return models[0]
    how = "none" if not found else f"{len(found)}"
    raise QuantNotFoundError(
        f"{how} of the GGUF files of {repo} match quant {wanted!r};"
        f" name one exactly (hf.co/{repo}:QUANT) or give REPO FILENAME."
        f" GGUF files: {_listing(found or models)}",
        param="model",
    )


def quant_in_filename(filename: str) -> str | None:
    """The quant a GGUF's name carries (``Q4_K_M``, ``BF16``, ...), if any."""
    name = filename.rsplit("/", 1)[-1]
    found = _QUANT_IN_NAME.findall(name)
    return found[-1] if found else None


def default_alias_name(repo: str, filename: str | None, quant: str | None) -> str:
    """The alias a pull writes when none is given (see the module docstring)."""
    base = re.sub(r"[-_.]gguf$", "", repo.split("/", 1)[1], flags=re.IGNORECASE) or "model"
    tag = quant or (quant_in_filename(filename) if filename else None)
    name = f"{base}:{tag}" if tag else base
    name = re.sub(r"[^A-Za-z0-9._:-]", "-", name.lower())
    name = re.sub(r"\.{2,}", ".", name).lstrip(".") or "model"
    return name[:64].rstrip(".")


@attrs.frozen
class PullRequest:
    """What to pull: ``filename`` (with its split parts) or the file carrying ``quant``.

    Build one with :meth:`from_ref`, :meth:`from_files` or :meth:`from_json`, which
    validate every field.

    Attributes:
        repo: ``owner/name`` on the Hub.
        revision: Branch, tag or commit (``main``).
        filename: The GGUF file (any part of a split one), or ``None`` with ``quant``.
        quant: The quant to look for when ``filename`` is ``None`` (``None``: the default).
        alias: The alias to write (``None``: :func:`default_alias_name`).
    """

    repo: str
    revision: str = "main"
    filename: str | None = None
    quant: str | None = None
    alias: str | None = None

    @classmethod
    def from_files(
        cls, repo: str, filename: str, *, revision: str = "main", alias: str | None = None
    ) -> PullRequest:
        """``REPO FILENAME``.

        Raises:
            InvalidRequestError: A field is invalid (``param`` names it).
        """
        return cls(
            repo=_field(validate_repo_id, repo, "repo"),
            revision=_field(validate_snapshot, revision, "revision"),
            filename=split_parts(_field(_check_gguf_name, filename, "filename"))[0],
            alias=None if alias is None else validate_alias_name(alias),
        )

    @classmethod
    def from_ref(cls, ref: str, *, revision: str = "main", alias: str | None = None) -> PullRequest:
        """``hf.co/REPO[:QUANT]``.

        Raises:
            InvalidRequestError: Not that shape, or an invalid revision or alias.
        """
        repo, quant = parse_model_ref(ref)
        return cls(
            repo=repo,
            revision=_field(validate_snapshot, revision, "revision"),
            quant=quant,
            alias=None if alias is None else validate_alias_name(alias),
        )

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> PullRequest:
        """A request body: ``{"repo", "filename"[, "revision", "alias"]}`` or
        ``{"model": "hf.co/REPO:QUANT"[, "revision", "alias"]}`` (``stream`` is the
        route's and ignored here).

        Raises:
            InvalidRequestError: Unknown keys, both or neither form, or a bad field.
        """
        unknown = sorted(str(key) for key in body if key not in _BODY_KEYS)
        if unknown:
            raise InvalidRequestError(f"unknown field(s) {', '.join(map(repr, unknown))}")
        revision = body.get("revision")
        revision = "main" if revision is None else revision
        alias = body.get("alias")
        if alias is not None and not isinstance(alias, str):
            raise InvalidRequestError("'alias' must be a string", param="alias")
        if not isinstance(revision, str):
            raise InvalidRequestError("'revision' must be a string", param="revision")
        has_files = body.get("repo") is not None or body.get("filename") is not None
        if body.get("model") is not None:
            if has_files:
                raise InvalidRequestError(
                    "give either 'model' (hf.co/REPO:QUANT) or 'repo' and 'filename', not both",
                    param="model",
                )
            return cls.from_ref(_text(body["model"], "model"), revision=revision, alias=alias)
        if not has_files:
            raise InvalidRequestError(
                "give 'model' (hf.co/REPO:QUANT) or 'repo' and 'filename'", param="repo"
            )
        return cls.from_files(
            _text(body.get("repo"), "repo"),
            _text(body.get("filename"), "filename"),
            revision=revision,
            alias=alias,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        """Requests with the same key share one download."""
        what = self.filename if self.filename is not None else f":{self.quant or DEFAULT_QUANT}"
        return (self.repo, self.revision, what)

    @property
    def alias_name(self) -> str:
        """The alias to write: the one given, else :func:`default_alias_name`."""
        if self.alias is not None:
            return self.alias
        return default_alias_name(self.repo, self.filename, self.quant)

    def describe(self) -> str:
        """``repo/filename@revision`` or ``hf.co/repo:QUANT@revision``, for messages."""
        if self.filename is not None:
            what = f"{self.repo}/{self.filename}"
        else:
            what = f"hf.co/{self.repo}:{self.quant or DEFAULT_QUANT}"
        return what if self.revision == "main" else f"{what}@{self.revision}"


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"'{field}' is required and must be a string", param=field)
    return value


def _field(check: Callable[[object], str], value: object, field: str) -> str:
    """``check(value)``, its error carrying ``param=field``."""
    try:
        result = check(value)
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param=field) from exc
    return result


def check_alias_target(
    store: AliasStore, name: str, repo: str, filename: str | None
) -> Alias | None:
    """Whether a pull of ``repo``/``filename`` may write alias ``name``.

    It may when there is no such alias or when it names the same file (then only its
    snapshot changes); ``filename`` ``None`` (not known yet) compares the repo only.

    Returns:
        The existing alias, if any.

    Raises:
        AliasExistsError: The alias names another model.
        InvalidAliasError: Its file is broken.
    """
    try:
        existing = store.get(name)
    except AliasNotFoundError:
        return None
    same_file = filename is None or existing.filename == filename
    if existing.repo != repo or not same_file:
        raise AliasExistsError(
            f"alias {name!r} already exists for {existing.repo}/{existing.filename};"
            ' choose another name (--alias, or "alias" in the request)',
            param="alias",
        )
    return existing


def write_pull_alias(store: AliasStore, name: str, repo: str, filename: str, commit: str) -> Alias:
    """Write alias ``name`` for a pulled file at ``commit`` (an existing alias of the
    same file keeps its other fields; only ``snapshot`` changes).

    Raises:
        AliasExistsError: The alias names another model (see :func:`check_alias_target`).
        ConfigError: The alias file cannot be written.
    """
    existing = check_alias_target(store, name, repo, filename)
    if existing is not None:
        alias = attrs.evolve(existing, snapshot=commit)
        store.put(alias)
        return alias
    alias = Alias(alias=name, repo=repo, filename=filename, snapshot=commit)
    store.create(alias)
    return alias
