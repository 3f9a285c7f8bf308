"""`route engine build-server | server-path`: llama.cpp's llama-server from the pinned llama-cpp-python.

The work is done by models.llama_server_build; this module parses arguments and prints. The
binary's path is the only thing on stdout (`$(route engine build-server)` in scripts); progress
goes to stderr. Errors are raised and rendered by router.cli's error handler.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape


def _options(cuda: bool, metal: bool, vulkan: bool):
    from models.llama_server_build import BuildOptions

    return BuildOptions(frozenset(name for name, on in (("cuda", cuda), ("metal", metal), ("vulkan", vulkan)) if on))


def register(app: typer.Typer) -> None:
    engine_app = typer.Typer(
        name="engine", help="The llama.cpp engine: build llama-server from the pinned llama-cpp-python's sources.",
        no_args_is_help=True, rich_markup_mode=None,
    )
    cuda_option = typer.Option(False, "--cuda", help="Compile in CUDA (cmake -DGGML_CUDA=ON; needs the CUDA toolkit).")
    metal_option = typer.Option(False, "--metal", help="Compile in Metal (cmake -DGGML_METAL=ON; macOS).")
    vulkan_option = typer.Option(False, "--vulkan", help="Compile in Vulkan (cmake -DGGML_VULKAN=ON; needs the Vulkan SDK).")

    @engine_app.command(
        "build-server",
        help="Build llama-server from the llama.cpp tree vendored by the installed llama-cpp-python's sdist "
        "(CPU unless a backend flag is given), cached per llama.cpp commit and options; prints its path.",
    )
    def build_command(
        cuda: bool = cuda_option,
        metal: bool = metal_option,
        vulkan: bool = vulkan_option,
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Parallel compile jobs (default: all cores)."),
        force: bool = typer.Option(False, "--force", help="Rebuild even when a cached binary exists."),
    ) -> None:
        from models.llama_server_build import build_server

        err = Console(stderr=True, highlight=False, soft_wrap=True)
        options = _options(cuda, metal, vulkan)
        if err.is_terminal:
            with err.status(f"llama-server ({options.key})") as status:
                built = build_server(options, jobs=jobs, force=force,
                                     progress=lambda line: status.update(escape(line)))
        else:
            built = build_server(options, jobs=jobs, force=force,
                                 progress=lambda line: None if line.startswith("[") else err.print(escape(line)))
        verb = "cached" if built.cached else "built"
        err.print(f"[green]{verb}[/] llama-server {escape(built.build_key)} for llama-cpp-python {built.version} "
                  f"(build {built.seconds:.0f}s)")
        typer.echo(str(built.path))

    @engine_app.command("server-path", help="Print the cached llama-server's path (exit 1 when it is not built).")
    def path_command(cuda: bool = cuda_option, metal: bool = metal_option, vulkan: bool = vulkan_option) -> None:
        from models.llama_server_build import ServerBuildError, find_server, pinned_version

        options = _options(cuda, metal, vulkan)
        path = find_server(options)
        if path is None:
            flags = "".join(f" --{name}" for name in sorted(options.backends))
            raise ServerBuildError(f"llama-server ({options.key}) is not built for llama-cpp-python {pinned_version()}: "
                                   f"run `route engine build-server{flags}`")
        typer.echo(str(path))

    app.add_typer(engine_app, name="engine")
