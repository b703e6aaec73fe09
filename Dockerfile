# The project image: `multitower` is the entrypoint, a step's command its arguments
# (`preprocess --config ... --date D`, `train ...`, `submit daily ...`). Build from the repository
# root and push it where the cluster pulls from; its tag goes in the config's k8s.image:
#   docker build -t registry.example.com/recsys/multitower:0.1.0 .
#
# The same install as `make` (requirements.lock, then the project without resolving anything
# again), so the cluster runs the versions the tests ran. The lock also holds the test tools
# (pytest, ruff, moto): a few MB, not run in production.
#
# GPU image (k8s.gpu_image, used by training workers that ask for nvidia.com/gpu):
#   docker build --build-arg TENSORFLOW_EXTRA=and-cuda \
#       -t registry.example.com/recsys/multitower-gpu:0.1.0 .
# TensorFlow's Linux wheel has the GPU kernels but loads CUDA and cuDNN from the NVIDIA wheels
# its `and-cuda` extra pins exactly (for 2.16.2: CUDA 12.3, cuDNN 8.9.7, NCCL 2.19.3), about
# 3 GB more. The nodes need an NVIDIA driver for CUDA 12 (>= 525) and the NVIDIA device plugin,
# which advertises `nvidia.com/gpu`. Without those wheels TensorFlow finds no GPU and trains on
# the CPU without a word, which is why the config refuses GPUs with no k8s.gpu_image.
FROM python:3.11-slim

ARG TENSORFLOW_EXTRA=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric user: the pods' runAsUser (k8s.run_as_user, default 1000) and runAsNonRoot
# need a number the kubelet can check. /scratch is where the pods mount their emptyDir; in the
# image it lets `docker run` work the same way.
RUN groupadd --system --gid 1000 multitower \
    && useradd --system --uid 1000 --gid 1000 --home-dir /scratch --no-create-home \
       --shell /usr/sbin/nologin multitower \
    && mkdir /scratch && chown 1000:1000 /scratch

WORKDIR /opt/multitower
COPY requirements.lock ./
RUN pip install --requirement requirements.lock \
    && if [ -n "$TENSORFLOW_EXTRA" ]; then \
         pip install "tensorflow[${TENSORFLOW_EXTRA}]==2.16.2"; \
       fi

COPY pyproject.toml README.md ./
COPY multitower ./multitower
COPY pipeline ./pipeline
COPY trainer ./trainer
COPY serving ./serving
COPY k8s ./k8s
COPY commands ./commands
# Installed, not editable: pip byte-compiles it now, as the pods' root file system is read-only.
RUN pip install --no-deps . && rm -rf build ./*.egg-info

USER 1000:1000
ENV HOME=/scratch TMPDIR=/scratch
WORKDIR /scratch
ENTRYPOINT ["multitower"]
CMD ["--help"]
