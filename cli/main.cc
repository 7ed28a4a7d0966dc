// lathe: the Lathe command line.
#include <string>
#include <vector>

#include "cli/commands.h"

int main(int argc, char** argv) {
  return lathe::cli::Run(std::vector<std::string>(argv + 1, argv + argc));
}
