"""hwsearch.dashboard: the Streamlit app (`hwsearch dashboard`) over the project's database.

`data` holds the cached, paged queries (no Streamlit widgets, so tests call them directly),
`plans` turns a plan into per-layer tables and export files, `charts` builds the Plotly
figures, and `views/` holds one script per page; `app.py` is the entry `streamlit run` starts.
The folder is not called `pages/`: Streamlit would serve such a folder as pages of its own,
running them without `app.py` (no navigation, no database check).
"""

ENV_DB = "HWSEARCH_DB"
