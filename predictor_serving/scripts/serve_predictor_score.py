"""The PARS predictor service.

    PREDICTOR_MODEL_PATH=.../best_model.pt PREDICTOR_MODEL_NAME=bert-base-uncased \
        uvicorn scripts.serve_predictor_score:app --host 127.0.0.1 --port 8000

or `python scripts/serve_predictor_score.py [--host H] [--port P]` (`--help` lists every setting).
Settings are read from PREDICTOR_* variables when the server starts (see pars/serving/settings.py);
the model is loaded once, at start-up.
"""

from pars.serving.app import create_app

app = create_app()

if __name__ == "__main__":
    from pars.serving.cli import cli

    cli()
