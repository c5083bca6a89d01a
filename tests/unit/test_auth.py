"""Ray's token auth as ray-pixi reads it: the token Ray would load, in Ray's order, and what
`ray-pixi doctor` says about a node's token auth and this shell's token."""

from __future__ import annotations

from pathlib import Path

from ray_pixi import auth


def test_the_token_comes_from_the_variable_then_the_file_it_names_then_home(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    named = tmp_path / "named"
    named.write_text("  from-file \n")
    both = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(named)}
    assert auth.find_token(both, home) == auth.TokenSource("RAY_AUTH_TOKEN", "from-env")
    assert auth.find_token({"RAY_AUTH_TOKEN_PATH": str(named)}, home) == auth.TokenSource(
        f"RAY_AUTH_TOKEN_PATH={named}", "from-file")
    assert auth.find_token({}, home) == auth.TokenSource(str(home / ".ray/auth_token"),
                                                         "from-home")
    # A named file that is missing is reported as such, not replaced by ~/.ray/auth_token.
    assert auth.find_token({"RAY_AUTH_TOKEN_PATH": "/nonexistent"}, home) == auth.TokenSource(
        "RAY_AUTH_TOKEN_PATH=/nonexistent", None)
    assert auth.find_token({}, tmp_path / "empty-home") is None


def test_token_mode_without_a_token_is_refused_before_any_connection(tmp_path: Path) -> None:
    message = auth.client_refusal("127.0.0.1:1", {"RAY_AUTH_MODE": "token"}, tmp_path)
    assert message == (
        "RAY_AUTH_MODE=token but this shell has no Ray auth token; pass one as Ray's tools "
        "take it: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN=<token>, or "
        "RAY_AUTH_TOKEN_PATH=<file holding it>, or the file ~/.ray/auth_token "
        "(`ray get-auth-token` on the head node prints the cluster's token)")


def test_doctor_says_whether_the_node_has_token_auth_and_a_token(tmp_path: Path) -> None:
    off = auth.check_token_auth({}, tmp_path, {}, tmp_path, node_is_running=True)
    assert (off.status, off.detail) == (
        "ok", "off (RAY_AUTH_MODE unset; `ray start` turns it on if it finds a token)")
    no_token = auth.check_token_auth({"RAY_AUTH_MODE": "token"}, tmp_path, {}, tmp_path,
                                     node_is_running=False)
    assert (no_token.status, no_token.detail) == ("FAIL", "RAY_AUTH_MODE=token but no token")
    assert "RAY_AUTH_TOKEN_PATH to a file holding the token" in no_token.fix
    node = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "abc"}
    before_start = auth.check_token_auth(node, tmp_path, {}, tmp_path, node_is_running=False)
    assert (before_start.status, before_start.detail) == (
        "ok", "on (RAY_AUTH_MODE=token), the node's token from RAY_AUTH_TOKEN")


def test_doctor_warns_when_this_shell_would_be_refused_by_the_running_node(
    tmp_path: Path,
) -> None:
    node = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "abc"}
    same = auth.check_token_auth(node, tmp_path, node, tmp_path, node_is_running=True)
    assert same.status == "ok" and same.detail.endswith(
        "this shell sends the same token (from RAY_AUTH_TOKEN)")
    # The token without RAY_AUTH_MODE=token is never sent by Ray's tools.
    unsent = auth.check_token_auth(node, tmp_path, {"RAY_AUTH_TOKEN": "abc"}, tmp_path,
                                   node_is_running=True)
    assert unsent.status == "warn" and "this shell sends no token, so `ray job submit` and " \
        "`ray-pixi prefetch` from here are refused" in unsent.detail
    other = auth.check_token_auth(node, tmp_path, {"RAY_AUTH_MODE": "token",
                                                   "RAY_AUTH_TOKEN": "xyz"}, tmp_path,
                                  node_is_running=True)
    assert other.status == "warn" and "sends another token (from RAY_AUTH_TOKEN)" in other.detail
    assert other.fix.startswith("pass the cluster's token as Ray's tools take it: ")
