"""The Gradio workbench over core/ (see DESIGN.md, "Workbench")."""
