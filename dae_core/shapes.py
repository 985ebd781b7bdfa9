"""The shape of the data that every module agrees on: 28x28 single-channel images of ten
classes (MNIST and Fashion-MNIST alike). Kept free of torch so that light modules (the
summary, the CLI's choices) can import it."""

IMAGE_SIDE = 28
INPUT_DIM = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
