"""Pieces every page shares: the database URL, choosing a job, and guidance for empty states.

The job a user opened is kept in `st.session_state["job_id"]` and mirrored in the URL
(`?job=3`), so a page can be bookmarked or shared and moving between pages keeps the choice.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from hwsearch.dashboard import data

NO_JOBS = ("No search jobs in this database yet. Start one with `hwsearch search --model vit_base --device NAME` "
           "(after `hwsearch profile` and `hwsearch train`); its trials appear here while it runs.")
NO_DEVICES = ("No devices in this database yet. Measure this machine with `hwsearch profile --local`, "
              "or import another device's measurements with `hwsearch devices import FILE`.")


def url() -> str:
    return data.db_url()


def job_label(row: pd.Series) -> str:
    bits = [f"#{row['id']} {row['name']}", str(row["status"])]
    if row.get("model"):
        bits.append(str(row["model"]))
    if row.get("device"):
        bits.append(f"on {row['device']}")
    return " · ".join(bits)


def job_table(url: str) -> pd.DataFrame:
    """The cached job list; refreshed at once when the URL names a job it does not have yet
    (a link to a job submitted seconds ago must not wait for the cache to expire)."""
    table = data.jobs(url)
    raw = st.query_params.get("job")
    if raw is not None and str(raw).isdigit() and int(raw) not in set(table["id"].tolist()):
        data.jobs.clear()
        table = data.jobs(url)
    return table


def current_job_id(table: pd.DataFrame) -> int | None:
    """The job named in the URL, else the one opened last, else the newest."""
    ids = table["id"].tolist()
    raw = st.query_params.get("job")
    for candidate in (raw, st.session_state.get("job_id")):
        try:
            if candidate is not None and int(candidate) in ids:
                return int(candidate)
        except (TypeError, ValueError):
            continue
    return ids[0] if ids else None


def _picked() -> None:
    st.session_state["job_id"] = int(st.session_state["job_pick"])
    st.query_params["job"] = str(st.session_state["job_pick"])


def pick_job(table: pd.DataFrame, label: str = "Job") -> int | None:
    """A job selectbox kept in step with `?job=` and the session; None when there are no jobs."""
    if table.empty:
        return None
    labels = {int(r["id"]): job_label(r) for _, r in table.iterrows()}
    chosen = current_job_id(table)
    st.session_state["job_pick"] = chosen
    st.selectbox(label, list(labels), format_func=lambda i: labels[int(i)], key="job_pick", on_change=_picked)
    st.session_state["job_id"] = chosen
    st.query_params["job"] = str(chosen)
    return chosen
