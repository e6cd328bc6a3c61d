"""tensevae's results database: jobs, models, figures, scores and words (SQLAlchemy 2)."""
