"""Referees: other projects' code, run in their own virtualenvs, that tests compare medseg with."""
