"""The console's audit pages (being built: issue 18)."""

from __future__ import annotations

from fastapi import FastAPI

from zguard.app.console.common import Page
from zguard.app.context import Services
from zguard.services.sessions import NoSessions, SessionService


def add_audit_pages(app: FastAPI, services: Services, sessions: SessionService | NoSessions, page: Page) -> None:
    """Register the audit pages and their JSON API routes on the console app."""
