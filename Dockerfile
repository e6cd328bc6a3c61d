# tensevae's worker and command image. TORCH_SPEC picks the torch build: the default is the
# CUDA build from PyPI (for the GPU worker); a CPU-only image can pass
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim
ARG TORCH_SPEC="torch>=2.6"
ARG TORCH_INDEX=""
WORKDIR /app
RUN if [ -n "$TORCH_INDEX" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC"; \
    else pip install --no-cache-dir "$TORCH_SPEC"; fi
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY workers ./workers
COPY db ./db
COPY configs ./configs
RUN pip install --no-cache-dir -e .
ENV TENSEVAE_HOME=/data
ENTRYPOINT ["tensevae"]
