"""Streamlit widgets of the app's pages (the engine, bnviz/, never imports this)."""
