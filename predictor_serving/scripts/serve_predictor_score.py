"""The PARS predictor service.

    PREDICTOR_MODEL_PATH=.../best_model.pt PREDICTOR_MODEL_NAME=bert-base-uncased \
        uvicorn scripts.serve_predictor_score:app --host 127.0.0.1 --port 8000

Settings are read from PREDICTOR_* variables when the server starts (see pars/serving/settings.py);
the model is loaded once, at start-up.
"""

from pars.serving.app import create_app

app = create_app()
