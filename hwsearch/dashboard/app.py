"""Entry script of `hwsearch dashboard` (`streamlit run app.py`): navigation and the database.

The database URL comes from HWSEARCH_DB (the CLI sets it from --db). A database that does not
answer is one line on the page, not a traceback; every page then reads through
`hwsearch.dashboard.data`, whose queries are cached, so moving between pages is cheap.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from hwsearch.dashboard import data
from hwsearch.errors import HwsearchError

HERE = Path(__file__).parent

st.set_page_config(page_title="hwsearch", page_icon=":material/speed:", layout="wide")

PAGES = [
    st.Page(HERE / "views" / "jobs.py", title="Jobs", icon=":material/list:", url_path="home", default=True),
    # The default page is served at "/" only; this hidden twin answers a bookmarked or typed /jobs.
    st.Page(HERE / "views" / "jobs.py", title="Jobs", icon=":material/list:", url_path="jobs", visibility="hidden"),
    st.Page(HERE / "views" / "pareto.py", title="Pareto explorer", icon=":material/scatter_plot:", url_path="pareto"),
    st.Page(HERE / "views" / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(HERE / "views" / "devices.py", title="Devices", icon=":material/memory:", url_path="devices"),
]
page = st.navigation(PAGES)

try:
    url = data.db_url()
    data.engine(url)
except HwsearchError as err:
    st.error(f"{err}", icon=":material/database:")
    st.info("Start the dashboard with a database that answers: `hwsearch dashboard --db URL` (or set HWSEARCH_DB).")
    st.stop()
with st.sidebar:
    from sqlalchemy import make_url

    st.caption(f"Database: `{make_url(url).render_as_string(hide_password=True)}`")
    if st.button("Refresh", icon=":material/refresh:", help="Read the database again (queries are cached for a few seconds)."):
        data.clear_caches()
page.run()
