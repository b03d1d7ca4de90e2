"""`trauma-node users`: the readers' accounts (node.store.readers).

    trauma-node users add NAME [--display "Dr Jane Doe"] [--role reader|admin]
    trauma-node users list [--json]
    trauma-node users disable NAME      (its token is refused from now on; verdicts stay)
    trauma-node users enable NAME
    trauma-node users token NAME        (a new token; the old one stops working)

`add` and `token` print the token once, on stdout, and nowhere else: only its SHA-256 is
stored. Each change is audited (Security Alert, User Security Attributes Changed) with the
account's name and the operating-system user who ran the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from node.config import load_settings
from node.store import readers


def _open(args: argparse.Namespace):
    from node.audit.trail import AuditTrail
    from node.store.database import Index

    settings = load_settings(args.config, overrides={"node.data_dir": args.data_dir})
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # accounts made before the first serve
    return Index(settings.database_url), AuditTrail(settings)


def cmd_users(args: argparse.Namespace) -> int:
    index, audit = _open(args)
    try:
        return _run(args, index, audit)
    except readers.AccountError as exc:
        print(f"users: {exc}", file=sys.stderr)
        return 1
    finally:
        index.close()


def _show_token(account: readers.Account, token: str, what: str) -> None:
    print(f"{what} {account.name} ({account.display_name}, {account.role}). Its token, shown "
          "this once (only its hash is kept; `trauma-node users token "
          f"{account.name}` makes a new one):")
    print(token)


def _run(args: argparse.Namespace, index, audit) -> int:
    action = args.users_command
    if action == "add":
        account, token = readers.add(index, args.name, args.display, args.role)
        audit.account_changed(account.name, f"account added (role {account.role})")
        _show_token(account, token, "Added")
    elif action == "token":
        account, token = readers.rotate(index, args.name)
        audit.account_changed(account.name, "token replaced: the old one is refused")
        _show_token(account, token, "New token for")
    elif action in ("disable", "enable"):
        account = readers.set_disabled(index, args.name, action == "disable")
        audit.account_changed(account.name, f"account {action}d")
        print(f"{account.name}: {'disabled' if account.disabled else 'enabled'}")
    else:  # list
        accounts = [a.public() for a in readers.accounts(index)]
        if args.json:
            print(json.dumps(accounts, indent=2))
        elif not accounts:
            print("no reader accounts: trauma-node users add NAME --display \"Dr Jane Doe\"")
        else:
            print(f"{'name':<20} {'display name':<28} {'role':<7} {'state':<9} token since")
            for a in accounts:
                print(f"{a['name']:<20} {a['display_name'][:28]:<28} {a['role']:<7} "
                      f"{'disabled' if a['disabled'] else 'active':<9} "
                      f"{a['token_created_at'] or '-'}")
    return 0


def add_parser(sub: argparse._SubParsersAction,
               with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    users = sub.add_parser("users", help="readers' accounts: each reader signs in to the page "
                                         "with their own token")
    actions = users.add_subparsers(dest="users_command", required=True)
    add = with_config(actions.add_parser("add", help="a new account; prints its token once"))
    add.add_argument("name", help="the login: lower-case letters, digits, '.', '_', '-'")
    add.add_argument("--display", help="the name people read, e.g. 'Dr Jane Doe' or 'Doe^Jane'")
    add.add_argument("--role", choices=readers.ROLES, default="reader")
    listing = with_config(actions.add_parser("list", help="the accounts (never their tokens)"))
    listing.add_argument("--json", action="store_true")
    for name, text in (("disable", "refuse the account's token from now on"),
                       ("enable", "accept a disabled account's token again"),
                       ("token", "a new token for the account; the old one stops working")):
        action = with_config(actions.add_parser(name, help=text))
        action.add_argument("name")
    users.set_defaults(func=cmd_users)
