"""``bdia app``: a local web app to invert an image once and edit it many times.

:mod:`bdia.app.work` is the work, plain Python over the :class:`~bdia.editing.Editor`; :mod:`bdia.app.ui`
the gradio page (the ``app`` extra: ``pip install -e ".[app]"``), imported only when the app runs.
"""
