"""The frontend's configuration: every knob declared once, with its flag, default and help."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class FrontendConfig:
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    namespace: str = "default"
    model_path: str | None = None
    migration_limit: int = 0
    max_body_mb: float = 64.0
    default_max_tokens: int = 4096
    long_prompt_chars: int = 16_384
    log_level: str = "INFO"

    def validate(self) -> "FrontendConfig":
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"--http-port must be 0..65535, got {self.http_port}")
        if self.migration_limit < 0:
            raise ValueError(f"--migration-limit must be >= 0, got {self.migration_limit}")
        if self.max_body_mb <= 0:
            raise ValueError(f"--max-body-mb must be positive, got {self.max_body_mb}")
        if self.default_max_tokens < 1:
            raise ValueError(f"--default-max-tokens must be >= 1, got {self.default_max_tokens}")
        return self

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        d = cls()
        parser.add_argument("--http-host", default=d.http_host,
                            help=f"address to serve HTTP on (default: {d.http_host}; binding "
                                 "elsewhere is an explicit choice)")
        parser.add_argument("--http-port", type=int, default=d.http_port,
                            help=f"HTTP port; 0 picks a free one (default: {d.http_port})")
        parser.add_argument("--namespace", default=d.namespace,
                            help="discovery namespace whose workers this frontend serves "
                                 f"(default: {d.namespace})")
        parser.add_argument("--model-path", default=d.model_path,
                            help="local model folder whose tokenizer every worker must use; by "
                                 "default each model's tokenizer is loaded from its workers' "
                                 "model path")
        parser.add_argument("--migration-limit", type=int, default=d.migration_limit,
                            help="times a request whose worker failed may continue on another "
                                 f"worker (default: {d.migration_limit}, off)")
        parser.add_argument("--max-body-mb", type=float, default=d.max_body_mb,
                            help=f"largest request body in MiB; larger gets 413 (default: "
                                 f"{d.max_body_mb:g})")
        parser.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                            help="output tokens when a request sets neither max_tokens nor "
                                 "max_completion_tokens, capped by the remaining context "
                                 f"(default: {d.default_max_tokens})")
        parser.add_argument("--long-prompt-chars", type=int, default=d.long_prompt_chars,
                            help="prompts longer than this many characters are tokenized in a "
                                 f"worker thread, off the event loop (default: {d.long_prompt_chars})")
        parser.add_argument("--log-level", default=d.log_level,
                            help=f"logging level (default: {d.log_level})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FrontendConfig":
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__}).validate()
