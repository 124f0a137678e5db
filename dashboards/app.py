"""Entry point of the dashboard (`controlplane dashboard`): login, then the page navigation."""

import streamlit as st

from controlplane.auth import login_required
from dashboards.pages import common

st.set_page_config(page_title="LLM control plane", layout="wide")

user = common.login_gate()

navigation = st.navigation(
    {
        "Monitor": [
            st.Page("pages/overview.py", title="Overview", url_path="overview", default=True),
            st.Page("pages/drift.py", title="Drift", url_path="drift"),
            st.Page("pages/cost.py", title="Cost", url_path="cost"),
            st.Page("pages/safety.py", title="Safety", url_path="safety"),
        ],
        "Act": [
            st.Page("pages/alerts.py", title="Alerts", url_path="alerts"),
            st.Page("pages/flagged.py", title="Flagged interactions", url_path="flagged"),
            st.Page("pages/jobs_models.py", title="Jobs & models", url_path="jobs"),
        ],
    }
)

with st.sidebar:
    st.caption(f"Signed in as **{user.name}** ({user.role})")
    if login_required(common.settings()) and st.button("Log out"):
        common.logout()
        st.rerun()

navigation.run()
